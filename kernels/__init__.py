"""surgeon's fused kernels: one package per op (reference, Triton kernel, ``surgeon::`` op registration).

Kernels import only torch and triton, and use relative imports, so this folder also runs on its own
(``PYTHONPATH=. python -c 'import kernels'``) on machines where surgeon is not installed.
"""

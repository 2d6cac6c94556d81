"""The op front-ends, one module per op family: validation -> backend selection -> autograd
Function -> public function. The kernels they select live in ia_kernels/kernels/<backend>/<op>.py,
reached through the registry (ia_kernels/backends.py). custom_ops.py defines the torch custom ops
(their schemas) into which the cpu and cuda backends register their kernels."""

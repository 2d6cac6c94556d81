"""The op front-ends, one module per op family: validation -> backend selection -> autograd
Function -> public function. The kernels they select live in ia_kernels/kernels/<backend>/<op>.py."""

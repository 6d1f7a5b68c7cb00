// The few libtorch entry points genlab needs that tch does not bind.
#include <ATen/autocast_mode.h>
#include <ATen/ATen.h>
#include <c10/core/ScalarType.h>

extern "C" {

// Point a leaf variable's .grad at `grad` (a view of a flat gradient buffer), so that
// autograd accumulates into the flat buffer in place. `t` and `grad` are tch tensors
// (torch-sys passes `at::Tensor*`). Returns 0, or -1 on error.
int genlab_set_grad(at::Tensor* t, at::Tensor* grad) {
  try {
    t->mutable_grad() = *grad;
    return 0;
  } catch (...) {
    return -1;
  }
}

// device: 0 = CPU, 1 = CUDA. dtype: 0 = float16, 1 = bfloat16.
// Returns the previous enabled state (or -1 on error).
int genlab_autocast_enter(int device, int dtype) {
  try {
    auto dev = device == 1 ? at::kCUDA : at::kCPU;
    bool prev = at::autocast::is_autocast_enabled(dev);
    at::autocast::set_autocast_dtype(dev, dtype == 1 ? at::kBFloat16 : at::kHalf);
    at::autocast::set_autocast_enabled(dev, true);
    at::autocast::increment_nesting();
    return prev ? 1 : 0;
  } catch (...) {
    return -1;
  }
}

int genlab_autocast_exit(int device, int prev) {
  try {
    auto dev = device == 1 ? at::kCUDA : at::kCPU;
    if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
    at::autocast::set_autocast_enabled(dev, prev == 1);
    return 0;
  } catch (...) {
    return -1;
  }
}

}

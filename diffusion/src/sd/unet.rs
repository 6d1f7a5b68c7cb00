//! diffusers' `UNet2DConditionModel`.

//! The CLIP text transformer of Stable-Diffusion-compatible models.

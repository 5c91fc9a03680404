"""The morphology study: Galaxy Zoo vote fractions with a DINOv2 ViT; out-of-distribution surveys."""

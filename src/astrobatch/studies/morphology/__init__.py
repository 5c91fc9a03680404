"""The morphology study: Galaxy Zoo vote fractions with a DINOv2 ViT; unseen surveys."""

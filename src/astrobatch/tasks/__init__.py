"""LightningModules, one per objective, each wrapping a pure ``torch.nn.Module``."""

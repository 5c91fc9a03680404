"""Pure ``torch.nn`` architectures shared by studies (no Lightning here).

A LightningModule in :mod:`astrobatch.tasks` wraps one of these modules. Every
module is built from plain arguments (widths, counts, names); a study builds
them from its own params (``studies/<study>/train.py``), and nothing here
imports a study. Models are an encoder followed by a head.

- :mod:`astrobatch.nn.cnn`: the convolutional encoder of images (feature vector
  or feature map) and the cluster_age CNN (encoder + MLP head).
- :mod:`astrobatch.nn.sets`: mask-aware, permutation-invariant set models
  (summary-statistics MLP, Deep Sets, Set Transformer).
- :mod:`astrobatch.nn.autoencoder`: the masked autoencoder of tabular features
  (the stellar_xp encoder).
- :mod:`astrobatch.nn.vit`: the DINOv2 ViT backbone (Hugging Face ``transformers``),
  from a local weights folder or a small random config; never downloaded.
- :mod:`astrobatch.nn.heads`: heads (MLP, ordered quantiles, Galaxy Zoo votes: fractions
  or Dirichlet concentrations; the place of the box head) and the encoder + head
  composition.
"""

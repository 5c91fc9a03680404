"""Pure ``torch.nn`` architectures shared by studies (no Lightning here).

A LightningModule in :mod:`astrobatch.tasks` wraps one of these modules; every
module is built from typed parameters (see :mod:`astrobatch.params`).

- :mod:`astrobatch.nn.sets`: mask-aware, permutation-invariant set models
  (summary-statistics MLP, Deep Sets, Set Transformer).
- :mod:`astrobatch.nn.cnn`: the cluster_age CNN (conv + max-pool blocks, dense head).
- :mod:`astrobatch.nn.autoencoder`: the stellar_xp masked autoencoder and quantile head.
"""

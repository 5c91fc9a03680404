"""LightningModules, one per objective, each wrapping a pure ``torch.nn.Module``.

The objectives know no study (a study subclasses or configures them with its
params, in ``studies/<study>/``):

- :mod:`astrobatch.tasks.regression`: scalar regression (Huber / MSE).
- :mod:`astrobatch.tasks.masked`: masked-reconstruction pretraining of tabular rows.
- :mod:`astrobatch.tasks.finetune`: generic encoder + head fine-tuning (optional
  head-only phase, two learning rates, pluggable loss) and weights-only loading
  of a pretrained encoder.
- :mod:`astrobatch.tasks.quantile`: the pinball loss and quantile fine-tuning.
- :mod:`astrobatch.tasks.votes`: losses on votes grouped by question (vote-weighted MSE on
  fractions, Dirichlet-multinomial NLL on counts; unasked questions contribute nothing),
  Dirichlet means and predictive intervals.
- :mod:`astrobatch.tasks.optim`: shared optimiser and schedule helpers.
"""

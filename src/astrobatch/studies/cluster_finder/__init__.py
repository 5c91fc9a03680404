"""The cluster_finder study: galaxy clusters in SDSS-like images and member catalogues.

redMaPPer cluster and member catalogues (the public DR8 layout and the redmapper code's
fixture layout, read into one canonical set of columns by :mod:`.catalogues`), the sky
geometry that turns members into detection boxes, a HEALPix survey footprint and the
empty-field positions drawn inside it (:mod:`.geometry`); on top of them a CNN classifier
(cluster / no cluster), a single-shot box detector and permutation-invariant member-set
regressors (k-ary Janossy pooling, Murphy et al. 2019, arXiv:1811.01900) for the redshift,
richness and centre of a cluster (see ``studies/cluster_finder.md``).
"""

"""Studies: each subpackage holds one study's own science, and this is their registry.

A study package ``astrobatch.studies.<name>`` has ``params.py`` (the pydantic model of its
``params.yaml`` section) and ``stages.py`` (a :class:`astrobatch.study.Study` named
``study``, whose Typer sub-app the CLI mounts as ``astrobatch <name-with-dashes>``).
Adding a study is one line in :data:`STUDIES`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StudyEntry:
    """Where a registered study lives.

    Attributes
    ----------
    package : str
        Import path of the study package.
    params : str
        Name of the section model in ``<package>.params``.
    """

    package: str
    params: str


#: The registry: ``params.yaml`` section name -> study entry (CLI name: dashes for underscores).
STUDIES: dict[str, StudyEntry] = {
    "star_sets": StudyEntry("astrobatch.studies.star_sets", "StarSetsParams"),
    "cluster_age": StudyEntry("astrobatch.studies.cluster_age", "ClusterAgeParams"),
    "stellar_xp": StudyEntry("astrobatch.studies.stellar_xp", "StellarXPParams"),
    "morphology": StudyEntry("astrobatch.studies.morphology", "MorphologyParams"),
    "cluster_finder": StudyEntry("astrobatch.studies.cluster_finder", "ClusterFinderParams"),
}

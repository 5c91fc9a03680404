"""star_sets: star-cluster properties from variable-size sets of member stars."""

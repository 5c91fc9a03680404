"""cluster_age: star-cluster ages from five-filter HST cutouts (CNN with blackout masks)."""

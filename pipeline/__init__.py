"""facerepro: a reproducible experiment pipeline for deep face recognition."""

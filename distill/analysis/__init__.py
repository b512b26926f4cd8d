"""Analysis of teachers and students: weight entanglement, spectra, truncation curves."""

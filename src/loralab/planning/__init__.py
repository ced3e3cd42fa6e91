"""GPU planning of the paper tables: cells, GPU memory and GPU-hours of a sweep before anything runs."""

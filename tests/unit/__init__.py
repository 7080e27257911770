"""Fast tests of one module or kernel at a time, against plain-Python references."""

"""Studies: experiments that train models through train.py (accuracy, not throughput); run by ``python -m bench``."""

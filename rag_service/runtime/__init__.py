"""The running process: the composition root (``service.py``), warm-up, budget check, calibration, admission,
metrics, hardware, doctor.
"""

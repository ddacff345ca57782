"""The closed-loop demo (an entry point, above the pipelines): the pet park's camera
(``camera.py``), the product owner's webhook receiver (``webhook.py``, also the tests' and
benchmarks' recording receiver) and the loop that serves, monitors, alerts, retrains and
releases (``loop.py``, run by ``mlops demo-loop``)."""

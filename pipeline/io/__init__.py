"""Storage: Zarr point sets in, results and checkpoints out (knows no mean shift maths).

::

    store       open and check the input; create, write and mark the output
    checkpoint  a run's saved state inside its output, to continue after a crash
    rows        leave rows holding NaN/Inf out of a run, and put them back as -1
    datasets    synthetic point sets (Gaussian blobs) written to Zarr
"""

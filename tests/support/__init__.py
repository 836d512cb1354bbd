"""What every test tier uses to run tokengate's real processes: simulators, the data plane
(``tokengate serve``), the control plane (``tokengate control``), billing workers, and the
models.yaml they read. One copy, so that a change to how tokengate starts is made once."""

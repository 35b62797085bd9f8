"""How events reach the detector core and flags reach people: one package per role.

`embedded/` (one process, no broker, the default) and `kafka/` (faust workers) are the two
runners; `queue/` is the support queue both feed; `lab/` holds the offline simulator and
evaluation. The modules here (replay, cli, settings, metrics, event_time, checkpoint) are shared
by all of them. No runner imports the other; `queue/` and `lab/` import no runner.
"""

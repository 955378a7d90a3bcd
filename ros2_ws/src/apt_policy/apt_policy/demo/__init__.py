"""``make demo``: the whole product on the simulated robot, with a report (see docs/DEMO.md).

Modules: ``run`` (the steps), ``episodes`` (what is asked), ``probe`` (the demo's ROS 2 node), ``processes``
(child processes, stopped on any exit), ``recording`` (plain-data episode records), ``report`` (metrics,
summary table, figure, video).
"""

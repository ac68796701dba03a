"""Scale-out: what several replicas sharing one catalog and one store need.

`versions` draws version numbers from the catalog and keeps its adapter rows, `leasing` hands
training jobs to nodes under expiring leases, and `serve` (with the `ray` extra) runs the
service as a Ray Serve application: serving replicas, and a `trainer` deployment of its own.
The single-process service uses none of it.
"""

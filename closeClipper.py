"""Stop every Clipper cluster and model container left on this machine.

Use it after a script that started a cluster crashed or was killed. Safe to run again:
with nothing left, it says so.
"""
from clipper_admin import stop_all_clusters

if __name__ == '__main__':
    stopped = stop_all_clusters()
    for name, processes in stopped:
        print("Stopped Clipper cluster '%s' (%d processes)" % (name, processes))
    if not stopped:
        print("No Clipper cluster is running.")

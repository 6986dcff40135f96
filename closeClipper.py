"""Stop every Clipper cluster and model container left on this machine.

Use it after a script that started a cluster crashed or was killed. Safe to run again:
with nothing left, it says so.
"""
from clipper_admin import stop_all_clusters

if __name__ == '__main__':
    stopped = stop_all_clusters()
    for what in stopped:
        print("Stopped Clipper %s" % what)
    if not stopped:
        print("No Clipper cluster is running.")

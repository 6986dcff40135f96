"""Stop the Clipper clusters left on this machine (say, after a script was killed).

With no option, every cluster of every backend: the local clusters of the state directory
(CLIPPER_STATE_DIR, default ~/.clipper), those on the Docker engine and on the Ray cluster;
--cluster and --backend narrow that down. Safe to run again: with nothing left, it says so.
"""
import argparse
import sys

from clipper_admin import ClipperException, stop_all_clusters
from clipper_admin.backends import BACKENDS, stopped_report

if __name__ == '__main__':
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cluster", "--cluster-name", metavar="NAME", help="stop only the cluster of this name")
    parser.add_argument("--backend", choices=list(BACKENDS), help="stop only the clusters of this backend")
    args = parser.parse_args()
    try:
        stopped = stop_all_clusters(backend=args.backend, cluster_name=args.cluster)
    except ClipperException as error:
        sys.exit("Error: %s" % error.msg)
    print(stopped_report(stopped, args.cluster))

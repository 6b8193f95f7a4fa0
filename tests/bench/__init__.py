"""On-demand benchmarks comparing pacs-appliance with Orthanc (not part of the default test run).

Run ``python -m tests.bench.run --help`` from the repository root; see README.md here.
"""

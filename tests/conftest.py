"""Shared pytest configuration."""


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than a few seconds even with a warm cache")
    config.addinivalue_line("markers", "e2e: boots VMs or runs packer builds (minutes)")

import pytest

from meshcore.identity import CertificateAuthority, SpiffeId, TrustBundle


@pytest.fixture(scope="session")
def ca():
    return CertificateAuthority.create("cluster.local")


@pytest.fixture(scope="session")
def other_ca():
    return CertificateAuthority.create("cluster.local")


@pytest.fixture
def alice():
    return SpiffeId("cluster.local", "shop", "frontend")


@pytest.fixture
def bob():
    return SpiffeId("cluster.local", "shop", "checkout")


@pytest.fixture
def bundle(ca):
    return TrustBundle(ca.roots)

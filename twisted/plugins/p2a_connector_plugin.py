"""The twistd plugin: ``twistd -n p2a-connector --config FILE``."""

from p2a_connector.tap import ServiceMaker

p2a_connector = ServiceMaker()

"""The official UNICORE TSI's ``tsi.properties`` keys, by the setting gridvm writes there
(the metadata schema validates renamings of them; the contextualization medium writes them)."""

OFFICIAL_PROPERTY_KEYS = {
    "my_addr": "tsi.my_addr", "my_port": "tsi.my_port",
    "unicorex_machine": "tsi.unicorex_machine", "unicorex_port": "tsi.unicorex_port",
    "keystore": "tsi.keystore", "certificate": "tsi.certificate",
    "truststore": "tsi.truststore", "allowed_dn": "tsi.allowed_dn.1",
}

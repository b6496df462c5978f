"""SNMPv3 protocol names as Pulse's settings spell them, mapped to pysnmp's: one table for the
gateway's SNMP polling (edge/connectors/snmp.py) and the cloud's SNMP traps (notify/senders/snmp.py)."""

from __future__ import annotations

from pysnmp.hlapi.v3arch.asyncio import auth as usm

AUTH = {
    "MD5": usm.USM_AUTH_HMAC96_MD5,
    "SHA": usm.USM_AUTH_HMAC96_SHA,
    "SHA224": usm.USM_AUTH_HMAC128_SHA224,
    "SHA256": usm.USM_AUTH_HMAC192_SHA256,
    "SHA384": usm.USM_AUTH_HMAC256_SHA384,
    "SHA512": usm.USM_AUTH_HMAC384_SHA512,
}
PRIV = {
    "DES": usm.USM_PRIV_CBC56_DES,
    "AES": usm.USM_PRIV_CFB128_AES,
    "AES192": usm.USM_PRIV_CFB192_AES_BLUMENTHAL,
    "AES256": usm.USM_PRIV_CFB256_AES_BLUMENTHAL,
}

"""The MQTT broker shared by the gateway (edge/) and the cloud's endpoint for direct devices
(cloud/mqtt/): amqtt with device authentication, the topic ACL of ``pulse.protocol.topics``,
durable-before-PUBACK intake, keep-alive and Will, and persistent sessions in SQLite.

What differs between the two tiers is passed in: the ``Intake`` (where an accepted message goes:
the gateway's buffer or the cloud's PostgreSQL writer) and the ``Authenticator`` (the gateway's
device table or the cloud's device tokens). Imports ``pulse.protocol`` and ``pulse.common`` only.
"""

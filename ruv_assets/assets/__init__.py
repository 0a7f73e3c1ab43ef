"""Assets by stage: preset -> dataset -> trained -> merged -> slot."""

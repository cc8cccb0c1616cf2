#!/bin/sh
# Runs once, when the postgres container starts on an empty postgres-data volume
# (the image's /docker-entrypoint-initdb.d). Three login roles, each with its own password
# from docker/.env, and two databases:
#
#   xray_gateway   owns database xray: the gateway nodes' shared index (GATEWAY_INDEX_URL)
#   orthanc        owns database orthanc: the Orthanc nodes' shared index (orthanc-postgresql)
#   xray_evidence  may connect to xray and nothing else; the evidence-view job then lets it
#                  SELECT the view made for the integrity plugin (gateway/index/evidence_view.py)
#
# PUBLIC loses CONNECT and TEMPORARY on both databases: a role reaches only what it is
# granted, and the evidence role cannot even make a temporary table.
set -eu
for value in "$INDEX_DB_PASSWORD" "$ORTHANC_DB_PASSWORD" "$EVIDENCE_DB_PASSWORD"; do
  case "$value" in *change-me*) echo "replace every change-me in docker/.env" >&2; exit 1 ;; esac
done
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
  -v gateway_pw="$INDEX_DB_PASSWORD" -v orthanc_pw="$ORTHANC_DB_PASSWORD" \
  -v evidence_pw="$EVIDENCE_DB_PASSWORD" <<'SQL'
CREATE ROLE xray_gateway LOGIN PASSWORD :'gateway_pw';
CREATE ROLE orthanc LOGIN PASSWORD :'orthanc_pw';
CREATE ROLE xray_evidence LOGIN PASSWORD :'evidence_pw';
ALTER ROLE xray_evidence SET default_transaction_read_only = on;
CREATE DATABASE xray OWNER xray_gateway ENCODING 'UTF8';
CREATE DATABASE orthanc OWNER orthanc ENCODING 'UTF8';
REVOKE ALL ON DATABASE xray FROM PUBLIC;
REVOKE ALL ON DATABASE orthanc FROM PUBLIC;
GRANT CONNECT ON DATABASE xray TO xray_evidence;
SQL

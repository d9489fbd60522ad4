#!/usr/bin/env bash
# Initiates the rs0 replica set once; a no-op when it already exists.
set -euo pipefail
until mongosh --quiet --host mongo1 --eval 'db.adminCommand("ping").ok' >/dev/null 2>&1; do sleep 1; done
mongosh --quiet --host mongo1 --eval '
  try { rs.status().ok } catch (e) {
    rs.initiate({ _id: "rs0", members: [
      { _id: 0, host: "mongo1:27017" }, { _id: 1, host: "mongo2:27017" }, { _id: 2, host: "mongo3:27017" } ] })
  }'
until mongosh --quiet --host mongo1 --eval 'db.hello().isWritablePrimary' | grep -q true; do sleep 1; done

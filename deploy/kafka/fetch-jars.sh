#!/usr/bin/env bash
# Copies the Apache Kafka 3.9.1 broker jars (and the reload4j log binding) from Maven Central into
# deploy/kafka/lib/. Idempotent: does nothing when lib/ already holds the broker jar and the stamp
# written by a completed run. Maven's ~/.m2 cache keeps the downloads between runs.
# Works from any working directory.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
lib="$here/lib"
stamp="$lib/.fetched-kafka_2.13-3.9.1"
jar="$lib/kafka_2.13-3.9.1.jar"

if [ -f "$jar" ] && [ -f "$stamp" ]; then
  echo "kafka jars: already in $lib ($(find "$lib" -maxdepth 1 -name '*.jar' | wc -l) jars), nothing to do"
  exit 0
fi

command -v mvn >/dev/null 2>&1 || { echo "fetch-jars.sh: mvn not found (apt-get install maven)" >&2; exit 1; }

mkdir -p "$lib"
# Start clean so jars of another version from an older POM cannot end up on the classpath.
find "$lib" -maxdepth 1 -name "*.jar" -delete
rm -f "$stamp"
# Maven's output is kept back unless it fails: even with -q -B it prints stray ANSI reset codes.
if ! out="$(mvn -q -B -Dstyle.color=never -f "$here/pom.xml" dependency:copy-dependencies \
  -DincludeScope=runtime -DoutputDirectory="$lib" 2>&1)"; then
  printf '%s\n' "$out" >&2
  echo "fetch-jars.sh: mvn dependency:copy-dependencies failed (Maven Central reachable?)" >&2
  exit 1
fi
if [ ! -f "$jar" ]; then
  echo "fetch-jars.sh: mvn finished but $jar is missing" >&2
  exit 1
fi
date -u +%Y-%m-%dT%H:%M:%SZ >"$stamp"
echo "kafka jars: fetched $(find "$lib" -maxdepth 1 -name '*.jar' | wc -l) jars from Maven Central into $lib"

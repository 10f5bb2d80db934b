#!/bin/bash
# zkServer.sh as the official image has it on PATH, for the two verbs the operator's
# manifests use: `start-foreground` (the server, QuorumPeerMain on $ZOO_CONF_DIR/zoo.cfg) and
# `status` (exit 0 only when this server is serving: standalone, leader or follower, which a
# member of an ensemble is only once a quorum has formed; the official script asks `srvr` too).
set -euo pipefail
cfg="${ZOO_CONF_DIR:-/conf}/zoo.cfg"
case "${1:-}" in
  start-foreground)
    # Every jar Debian installed, but one SLF4J binding: log4j 1.2 (with its config); the other
    # bindings and the bridges back into SLF4J stop the JVM with a delegation loop.
    cp="$(ls /usr/share/java/*.jar | grep -Ev '/(slf4j-(jcl|jdk14|nop|simple)|log4j-over-slf4j)[-.]' | tr '\n' ':')"
    exec java ${SERVER_JVMFLAGS:--Xmx256m} -Dzookeeper.log.dir="${ZOO_LOG_DIR:-/logs}" \
      -Dlog4j.configuration=file:/etc/zookeeper/conf/log4j.properties \
      -cp "/etc/zookeeper/conf:$cp" org.apache.zookeeper.server.quorum.QuorumPeerMain "$cfg"
    ;;
  status)
    port="$(sed -n 's/^clientPort=//p' "$cfg" | head -1)"
    if [[ -z "$port" ]]; then
      port="$(grep -o ';[0-9]*$' "$cfg" | head -1 | tr -d ';')"
    fi
    port="${port:-2181}"
    exec 3<>"/dev/tcp/127.0.0.1/$port" || { echo "Error contacting service. It is probably not running."; exit 1; }
    echo srvr >&3
    reply="$(timeout 5 cat <&3 || true)"
    mode="$(printf '%s\n' "$reply" | sed -n 's/^Mode: //p')"
    echo "Client port found: $port. Mode: ${mode:-unknown}"
    case "$mode" in standalone|leader|follower) exit 0 ;; *) exit 1 ;; esac
    ;;
  *)
    echo "usage: zkServer.sh start-foreground|status" >&2; exit 2 ;;
esac

// CoreDNS with only the plugins the test node's cluster DNS needs (kubernetes, cache, errors,
// log, health, ready): Service and StatefulSet pod names resolve inside the node's pods; no
// other name does, since nothing leaves the node's network namespace (no forward plugin).
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
)

func main() {
	// Keep the upstream plugin order (dnsserver.Directives): plugins not linked in are skipped.
	_ = dnsserver.Directives
	coremain.Run()
}

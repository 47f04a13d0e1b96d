// Command kube is a multi-call binary holding kube-apiserver,
// kube-controller-manager and kube-scheduler from k8s.io/kubernetes, linked
// once to save link time. Usage: kube <apiserver|controller-manager|scheduler> [flags]
// (or call it through a symlink named kube-apiserver, ...).
package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	_ "time/tzdata" // for CronJob time zone support

	"github.com/spf13/cobra"
	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"          // JSON log format
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // client-go metrics
	_ "k8s.io/component-base/metrics/prometheus/version"  // version metric

	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
)

func main() {
	// Called through a symlink named kube-apiserver (etc.), or as `kube <component> ...`.
	name := strings.TrimPrefix(filepath.Base(os.Args[0]), "kube-")
	args := os.Args[1:]
	switch name {
	case "apiserver", "controller-manager", "scheduler":
	default:
		if len(args) == 0 {
			fmt.Fprintln(os.Stderr, "usage: kube <apiserver|controller-manager|scheduler> [flags]")
			os.Exit(2)
		}
		name, args = strings.TrimPrefix(args[0], "kube-"), args[1:]
	}
	var command *cobra.Command
	switch name {
	case "apiserver":
		command = apiserver.NewAPIServerCommand()
	case "controller-manager":
		command = controllermanager.NewControllerManagerCommand()
	case "scheduler":
		command = scheduler.NewSchedulerCommand()
	default:
		fmt.Fprintf(os.Stderr, "kube: unknown component %q\n", name)
		os.Exit(2)
	}
	command.SetArgs(args)
	os.Exit(cli.Run(command))
}

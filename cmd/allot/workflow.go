package main

import (
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/allot/allot"
	"github.com/allot/allot/engine"
	allothttp "github.com/allot/allot/http"
	"github.com/allot/allot/notify"
	"github.com/allot/allot/payments"
	"github.com/allot/allot/sellers"
	"github.com/allot/allot/workflow"
)

// oaFlags are the OpenActive API's settings.
type oaFlags struct {
	on, testInterface *bool
	baseURL           *string
	partners          keyValues
}

func openActiveFlags(fs *flag.FlagSet) *oaFlags {
	f := &oaFlags{partners: keyValues{}}
	f.on = fs.Bool("openactive", envBool("ALLOT_OPENACTIVE", false), "serve the OpenActive Open Booking API: public feeds of every slot resource at /feeds/..., the dataset site /openactive, booking at /api/openbooking (ALLOT_OPENACTIVE=true)")
	f.baseURL = fs.String("openactive-base-url", env("ALLOT_OPENACTIVE_BASE_URL", ""), "the URL clients reach this server at, for OpenActive @ids (default http://--addr)")
	f.testInterface = fs.Bool("openactive-test-interface", false, "turn on the OpenActive test interface and the test suite's client-id header (implies --openactive); never in production")
	fs.Var(f.partners, "openactive-partner", "NAME=API_KEY: an OpenActive booking partner and its key (Authorization: Bearer); repeatable")
	return f
}

// flowFlags are the workflow's command-line settings.
type flowFlags struct {
	on                           *bool
	defaultProvider              *string
	webhooks, secrets            keyValues
	sellerURL, sellerToken       *string
	smtpAddr, smtpUser, smtpPass *string
	smtpFrom, notifyFile         *string
	paymentTimeout, sellerTO     *time.Duration
	attempts                     *int
	stepTimeout, rescueAfter     *time.Duration
}

// keyValues is a repeatable NAME=VALUE flag.
type keyValues map[string]string

func (kv keyValues) String() string {
	keys := make([]string, 0, len(kv))
	for k := range kv {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return strings.Join(keys, ",")
}

func (kv keyValues) Set(v string) error {
	k, val, ok := strings.Cut(v, "=")
	if !ok || k == "" || val == "" {
		return fmt.Errorf("want NAME=VALUE, got %q", v)
	}
	if _, dup := kv[k]; dup {
		return fmt.Errorf("%q given twice", k)
	}
	kv[k] = val
	return nil
}

func workflowFlags(fs *flag.FlagSet) *flowFlags {
	f := &flowFlags{webhooks: keyValues{}, secrets: keyValues{}}
	f.on = fs.Bool("workflow", envBool("ALLOT_WORKFLOW", true), "carry orders through payment, seller confirmation and notification (ALLOT_WORKFLOW=false: reserve at once)")
	f.defaultProvider = fs.String("payment-default", env("ALLOT_PAYMENT_DEFAULT", "fake"), "payment provider for orders that name none: fake, or a --payment-webhook name")
	fs.Var(f.webhooks, "payment-webhook", "NAME=BASE_URL: a webhook-style payment provider (POST BASE_URL/charges and /refunds); repeatable")
	fs.Var(f.secrets, "payment-secret", "NAME=SECRET: the provider's callback signing secret (or ALLOT_PAYMENT_SECRET_<NAME>); repeatable")
	f.sellerURL = fs.String("seller", env("ALLOT_SELLER", "auto"), "how sellers confirm: auto (at once), manual (each answers at POST /v1/orders/{id}/seller-decision), or an http(s) URL to POST each booking to (200 decides, 202 answers later) (ALLOT_SELLER)")
	f.sellerToken = fs.String("seller-token", env("ALLOT_SELLER_TOKEN", ""), "Bearer token sent to an http --seller and required on seller decisions (ALLOT_SELLER_TOKEN)")
	f.smtpAddr = fs.String("smtp-addr", env("ALLOT_SMTP_ADDR", ""), "send notifications by SMTP through HOST:PORT (ALLOT_SMTP_ADDR)")
	f.smtpUser = fs.String("smtp-user", env("ALLOT_SMTP_USER", ""), "SMTP user (ALLOT_SMTP_USER)")
	f.smtpPass = fs.String("smtp-password", "", "SMTP password (prefer ALLOT_SMTP_PASSWORD)")
	f.smtpFrom = fs.String("smtp-from", env("ALLOT_SMTP_FROM", "allot@localhost"), "From address of notifications")
	f.notifyFile = fs.String("notify-file", env("ALLOT_NOTIFY_FILE", ""), "write notifications as JSON lines to this file instead (development)")
	f.paymentTimeout = fs.Duration("payment-timeout", engine.DefaultPaymentTimeout, "expire (and release) an order still awaiting payment after this")
	f.sellerTO = fs.Duration("seller-timeout", engine.DefaultSellerTimeout, "reject (refund, release) a paid order its seller has not answered after this")
	f.attempts = fs.Int("step-attempts", 10, "tries of a workflow step before it becomes a dead letter")
	f.stepTimeout = fs.Duration("step-timeout", 30*time.Second, "bound on one try of a workflow step")
	f.rescueAfter = fs.Duration("step-rescue-after", time.Minute, "re-run a step whose worker died (a crash) after this; must exceed --step-timeout")
	return f
}

// flowConfig is the workflow built from the flags.
type flowConfig struct {
	runner workflow.Config
	engine engine.Workflow
	api    allothttp.WorkflowOptions
	fake   *payments.Fake
}

func (f *flowFlags) build(log *slog.Logger) (*flowConfig, error) {
	if !*f.on {
		return nil, nil
	}
	if *f.rescueAfter <= *f.stepTimeout {
		return nil, errors.New("--step-rescue-after must exceed --step-timeout")
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"--payment-timeout", *f.paymentTimeout}, {"--seller-timeout", *f.sellerTO}, {"--step-timeout", *f.stepTimeout}} {
		if d.v <= 0 {
			// Zero would be taken as "the default" further in.
			return nil, fmt.Errorf("%s must be positive, not %v", d.name, d.v)
		}
	}
	if *f.attempts < 1 || *f.attempts > 100 {
		return nil, errors.New("--step-attempts must be 1..100")
	}
	fc := &flowConfig{fake: &payments.Fake{PendingDelay: 2 * time.Second}}
	pays := map[string]allot.Payments{"fake": fc.fake}
	secrets := map[string]string{}
	for name, base := range f.webhooks {
		if name == "fake" {
			return nil, errors.New("--payment-webhook: the name fake is the built-in provider's")
		}
		if u, err := url.Parse(base); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("--payment-webhook %s: %q is not an http(s) URL", name, base)
		}
		pays[name] = payments.Client{BaseURL: strings.TrimSuffix(base, "/")}
		secret := f.secrets[name]
		if secret == "" {
			secret = os.Getenv("ALLOT_PAYMENT_SECRET_" + strings.ToUpper(name))
		}
		if secret == "" {
			return nil, fmt.Errorf("--payment-webhook %s needs --payment-secret %s=SECRET to verify its callbacks", name, name)
		}
		secrets[name] = secret
	}
	if _, ok := pays[*f.defaultProvider]; !ok {
		return nil, fmt.Errorf("--payment-default %q is not a configured provider", *f.defaultProvider)
	}
	var seller allot.Sellers
	switch *f.sellerURL {
	case "auto":
		seller = sellers.Auto{}
	case "manual":
		seller = sellers.Manual{}
	default:
		if u, err := url.Parse(*f.sellerURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("--seller must be auto, manual or an http(s) URL, not %q", *f.sellerURL)
		}
		seller = sellers.HTTP{URL: *f.sellerURL, Token: *f.sellerToken}
	}
	if _, auto := seller.(sellers.Auto); !auto && *f.sellerToken == "" {
		return nil, errors.New("--seller " + *f.sellerURL + " needs --seller-token: sellers answer at /v1/orders/{id}/seller-decision with it")
	}
	var notifier allot.Notifier = notify.Log{Logger: log}
	switch {
	case *f.smtpAddr != "":
		pass := *f.smtpPass
		if pass == "" {
			pass = os.Getenv("ALLOT_SMTP_PASSWORD")
		}
		notifier = notify.SMTP{Addr: *f.smtpAddr, Username: *f.smtpUser, Password: pass, From: *f.smtpFrom}
	case *f.notifyFile != "":
		notifier = notify.File{Path: *f.notifyFile}
	}
	fc.runner = workflow.Config{Payments: pays, Sellers: seller, Notifier: notifier, Logger: log,
		MaxAttempts: *f.attempts, StepTimeout: *f.stepTimeout, RescueAfter: *f.rescueAfter}
	fc.engine = engine.Workflow{DefaultProvider: *f.defaultProvider,
		Providers:      func(n string) bool { _, ok := pays[n]; return ok },
		PaymentTimeout: *f.paymentTimeout, SellerTimeout: *f.sellerTO}
	fc.api = allothttp.WorkflowOptions{CallbackSecrets: secrets, SellerToken: *f.sellerToken}
	return fc, nil
}

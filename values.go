package allot

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"reflect"
	"strconv"
	"strings"
	"time"
)

// DateLayout is the wire form of a date (seed 000 wanted exactly this).
const DateLayout = "2006-01-02"

// Date is a civil date without time zone, YYYY-MM-DD on the wire.
type Date struct{ t time.Time }

// ParseDate parses YYYY-MM-DD strictly.
func ParseDate(s string) (Date, error) {
	t, err := time.Parse(DateLayout, s)
	if err != nil {
		return Date{}, fmt.Errorf("%q is not a date of the form YYYY-MM-DD", s)
	}
	return Date{t}, nil
}

// DateOf is the civil date of t in t's location.
func DateOf(t time.Time) Date {
	y, m, d := t.Date()
	return Date{time.Date(y, m, d, 0, 0, 0, 0, time.UTC)}
}

// MustDate parses s or panics; for tests and constants.
func MustDate(s string) Date {
	d, err := ParseDate(s)
	if err != nil {
		panic(err)
	}
	return d
}

func (d Date) String() string     { return d.t.Format(DateLayout) }
func (d Date) AddDays(n int) Date { return Date{d.t.AddDate(0, 0, n)} }
func (d Date) Before(o Date) bool { return d.t.Before(o.t) }
func (d Date) IsZero() bool       { return d.t.IsZero() }

// Time is the start of the date in UTC.
func (d Date) Time() time.Time              { return d.t }
func (d Date) DaysUntil(o Date) int         { return int(o.t.Sub(d.t).Hours() / 24) }
func (d Date) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

func (d *Date) UnmarshalText(b []byte) error {
	p, err := ParseDate(string(b))
	if err != nil {
		return err
	}
	*d = p
	return nil
}

// UnmarshalJSON reads "YYYY-MM-DD". A bad value is a *json.UnmarshalTypeError,
// which the decoder annotates with the field's path (lines.check_in).
func (d *Date) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err == nil {
		if p, err := ParseDate(s); err == nil {
			*d = p
			return nil
		}
	}
	return &json.UnmarshalTypeError{Value: string(b), Type: reflect.TypeFor[Date]()}
}

// Nights lists the nights of a stay: check-in up to, not including, check-out.
func Nights(checkIn, checkOut Date) []string {
	n := checkIn.DaysUntil(checkOut)
	out := make([]string, 0, max(n, 0))
	for i := 0; i < n; i++ {
		out = append(out, checkIn.AddDays(i).String())
	}
	return out
}

// Money is an exact decimal amount in a currency: Minor units at Scale
// decimal places (120.00 EUR is {12000, 2, "EUR"}). It never uses floats.
type Money struct {
	Minor    int64
	Scale    int
	Currency string
}

// MaxMoneyScale bounds the decimal places an amount may have.
const MaxMoneyScale = 6

// ParseMoney parses a non-negative decimal string like "120.00" and an ISO
// 4217-shaped currency code. It checks the form only, so that amounts
// stored by any version read back; what a new price may be is Exact's.
func ParseMoney(amount, code string) (Money, error) {
	if len(code) != 3 || strings.ToUpper(code) != code || strings.ContainsFunc(code, func(r rune) bool { return r < 'A' || r > 'Z' }) {
		return Money{}, fmt.Errorf("currency %q is not a three-letter upper-case ISO 4217 code", code)
	}
	whole, frac, hasDot := strings.Cut(amount, ".")
	if whole == "" || len(whole) > 12 || (hasDot && (frac == "" || len(frac) > MaxMoneyScale)) || !digits(whole) || !digits(frac) {
		return Money{}, fmt.Errorf("amount %q is not a non-negative decimal with at most 12 integer digits and %d decimals, such as \"120.00\"", amount, MaxMoneyScale)
	}
	v, _ := strconv.ParseInt(whole+frac, 10, 64)
	return Money{Minor: v, Scale: len(frac), Currency: code}, nil
}

// Exact returns m no finer than its currency's ISO 4217 minor unit, zeros
// past it dropped ("12.500" EUR is 12.50), or an error if a digit past it
// is not zero ("12.505" EUR, "10.5" JPY): no payment could charge it. A
// code without a minor unit in ISO 4217 (BTC, loyalty points, XAU) keeps
// up to MaxMoneyScale decimals.
func (m Money) Exact() (Money, error) {
	unit, ok := MinorUnit(m.Currency)
	if !ok || m.Scale <= unit {
		return m, nil
	}
	div := int64(math.Pow10(m.Scale - unit))
	if m.Minor%div != 0 {
		most := fmt.Sprintf("have at most %d decimals", unit)
		if unit == 0 {
			most = "are whole numbers"
		}
		return Money{}, fmt.Errorf("%s %s is finer than %s's minor unit: %s amounts %s", m.Amount(), m.Currency, m.Currency, m.Currency, most)
	}
	return Money{Minor: m.Minor / div, Scale: unit, Currency: m.Currency}, nil
}

// MinorUnit is the number of decimals ISO 4217 gives a currency, and
// whether it gives one. Not CLDR's table (golang.org/x/text's): it gives
// IDR, COP or IQD fewer decimals than ISO, so it would refuse amounts that
// ISO allows.
func MinorUnit(code string) (int, bool) {
	if n, ok := minorUnits[code]; ok {
		return n, true
	}
	if twoDecimal[code] {
		return 2, true
	}
	return 0, false
}

// minorUnits: the ISO 4217 currencies whose minor unit is not 2 decimals.
var minorUnits = map[string]int{
	"BIF": 0, "CLP": 0, "DJF": 0, "GNF": 0, "ISK": 0, "JPY": 0, "KMF": 0, "KRW": 0, "PYG": 0,
	"RWF": 0, "UGX": 0, "UYI": 0, "VND": 0, "VUV": 0, "XAF": 0, "XOF": 0, "XPF": 0,
	"BHD": 3, "IQD": 3, "JOD": 3, "KWD": 3, "LYD": 3, "OMR": 3, "TND": 3,
	"CLF": 4, "UYW": 4,
}

// twoDecimal holds the ISO 4217 currencies with a minor unit of 2
// decimals (current codes and those recently replaced).
var twoDecimal = func() map[string]bool {
	m := map[string]bool{}
	for _, c := range strings.Fields(twoDecimals) {
		m[c] = true
	}
	return m
}()

const twoDecimals = "AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BMD BND BOB BOV BRL BSD BTN BWP BYN " +
	"BZD CAD CDF CHE CHF CHW CNY COP COU CRC CUC CUP CVE CZK DKK DOP DZD EGP ERN ETB EUR FJD FKP GBP GEL GHS GIP " +
	"GMD GTQ GYD HKD HNL HRK HTG HUF IDR ILS INR IRR JMD KES KGS KHR KPW KYD KZT LAK LBP LKR LRD LSL MAD MDL MGA " +
	"MKD MMK MNT MOP MRU MUR MVR MWK MXN MXV MYR MZN NAD NGN NIO NOK NPR NZD PAB PEN PGK PHP PKR PLN QAR RON RSD " +
	"RUB SAR SBD SCR SDG SEK SGD SHP SLE SLL SOS SRD SSP STN SVC SYP SZL THB TJS TMT TOP TRY TTD TWD TZS UAH USD " +
	"USN UYU UZS VED VES WST XCD XCG YER ZAR ZMW ZWG ZWL"

func digits(s string) bool {
	for _, r := range s {
		if r < '0' || r > '9' {
			return false
		}
	}
	return true
}

// Amount formats the decimal amount with its scale.
func (m Money) Amount() string {
	s := strconv.FormatInt(m.Minor, 10)
	if m.Scale == 0 {
		return s
	}
	if len(s) <= m.Scale {
		s = strings.Repeat("0", m.Scale-len(s)+1) + s
	}
	return s[:len(s)-m.Scale] + "." + s[len(s)-m.Scale:]
}

// ErrMoneyOverflow is returned when an amount outgrows int64 minor units.
var ErrMoneyOverflow = errors.New("amount too large")

// mul multiplies non-negative amounts, refusing overflow.
func mul(a, b int64) (int64, error) {
	if a < 0 || b < 0 || (a != 0 && b > math.MaxInt64/a) {
		return 0, ErrMoneyOverflow
	}
	return a * b, nil
}

// Times multiplies by a non-negative whole number.
func (m Money) Times(n int) (Money, error) {
	v, err := mul(m.Minor, int64(n))
	m.Minor = v
	return m, err
}

// Add adds two amounts of the same currency, keeping the larger scale.
func (m Money) Add(o Money) (Money, error) {
	if m.Currency != o.Currency {
		return Money{}, fmt.Errorf("cannot add %s to %s", o.Currency, m.Currency)
	}
	var err error
	for m.Scale < o.Scale && err == nil {
		m.Minor, err = mul(m.Minor, 10)
		m.Scale++
	}
	for o.Scale < m.Scale && err == nil {
		o.Minor, err = mul(o.Minor, 10)
		o.Scale++
	}
	if err != nil || m.Minor > math.MaxInt64-o.Minor {
		return Money{}, ErrMoneyOverflow
	}
	m.Minor += o.Minor
	return m, nil
}

type moneyJSON struct {
	Amount   string `json:"amount"`
	Currency string `json:"currency"`
}

func (m Money) MarshalJSON() ([]byte, error) {
	return json.Marshal(moneyJSON{m.Amount(), m.Currency})
}

func (m *Money) UnmarshalJSON(b []byte) error {
	var j struct{ Amount, Currency json.RawMessage }
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	var amount, code string
	if err := dec.Decode(&j); err != nil || json.Unmarshal(j.Amount, &amount) != nil || json.Unmarshal(j.Currency, &code) != nil {
		// Amounts are strings so that no float ever rounds one.
		return fmt.Errorf(`a price must be {"amount": "120.00", "currency": "EUR"}, the amount a string, not %.100s`, b)
	}
	p, err := ParseMoney(amount, code)
	if err != nil {
		return err
	}
	*m = p
	return nil
}

package http

import (
	"bytes"
	"encoding/json"
	"fmt"
	nethttp "net/http"
	"net/http/httptest"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/allot/allot"
)

// httpMethods are the keys of an OpenAPI path item that are operations.
var httpMethods = []string{"get", "put", "post", "delete", "options", "head", "patch", "trace"}

// TestOpenAPI holds openapi.json to the server: every route in routes() is
// documented with its path parameters and nothing else is, every $ref
// resolves, every error is a Problem, and the problem codes are those of
// problemStatus with their statuses.
func TestOpenAPI(t *testing.T) {
	var doc map[string]any
	if err := json.Unmarshal(openapi, &doc); err != nil {
		t.Fatalf("openapi.json is not JSON: %v", err)
	}
	if v, _ := doc["openapi"].(string); !strings.HasPrefix(v, "3.") {
		t.Fatalf("openapi.json: \"openapi\" is %q, want 3.x", v)
	}
	paths, ok := doc["paths"].(map[string]any)
	if !ok {
		t.Fatal("openapi.json has no paths object")
	}

	// routes() only builds handler closures, so it needs no engine.
	routed := map[string]bool{} // "METHOD /path/{param}"
	for _, r := range (&Server{}).routes() {
		method, path, ok := strings.Cut(r.pattern, " ")
		if !ok {
			t.Fatalf("route %q has no method", r.pattern)
		}
		routed[method+" "+openAPIPath(path)] = true
	}

	t.Run("routes are documented", func(t *testing.T) {
		for _, key := range sortedKeys(routed) {
			method, path, _ := strings.Cut(key, " ")
			item, ok := paths[path].(map[string]any)
			if !ok {
				t.Errorf("route %s: openapi.json has no path %q", key, path)
				continue
			}
			if _, ok := item[strings.ToLower(method)].(map[string]any); !ok {
				t.Errorf("route %s: openapi.json path %q has no %q operation", key, path, strings.ToLower(method))
			}
		}
	})

	t.Run("documented operations are routes", func(t *testing.T) {
		for _, path := range sortedKeys(paths) {
			item, _ := paths[path].(map[string]any)
			for _, m := range httpMethods {
				if _, ok := item[m]; ok && !routed[strings.ToUpper(m)+" "+path] {
					t.Errorf("openapi.json documents %s %s, which no route serves", strings.ToUpper(m), path)
				}
			}
		}
	})

	eachOperation := func(f func(name string, item, op map[string]any)) {
		for _, path := range sortedKeys(paths) {
			item, _ := paths[path].(map[string]any)
			for _, m := range httpMethods {
				if op, ok := item[m].(map[string]any); ok {
					f(strings.ToUpper(m)+" "+path, item, op)
				}
			}
		}
	}

	t.Run("path parameters", func(t *testing.T) {
		eachOperation(func(name string, item, op map[string]any) {
			_, path, _ := strings.Cut(name, " ")
			want := map[string]bool{}
			for _, p := range templateParams(path) {
				want[p] = true
			}
			got := map[string]bool{}
			for _, p := range parameters(t, doc, item, op) {
				if p["in"] != "path" {
					continue
				}
				n, _ := p["name"].(string)
				got[n] = true
				if !want[n] {
					t.Errorf("%s: documents path parameter %q, which the path does not have", name, n)
				}
				if p["required"] != true {
					t.Errorf("%s: path parameter %q is not required: true", name, n)
				}
			}
			for _, n := range sortedKeys(want) {
				if !got[n] {
					t.Errorf("%s: path parameter %q is not documented", name, n)
				}
			}
		})
	})

	t.Run("POSTs take Idempotency-Key", func(t *testing.T) {
		eachOperation(func(name string, item, op map[string]any) {
			if !strings.HasPrefix(name, "POST ") {
				return
			}
			for _, p := range parameters(t, doc, item, op) {
				if p["in"] == "header" && p["name"] == "Idempotency-Key" {
					return
				}
			}
			t.Errorf("%s: the Idempotency-Key header is not documented", name)
		})
	})

	t.Run("responses", func(t *testing.T) {
		eachOperation(func(name string, item, op map[string]any) {
			responses, _ := op["responses"].(map[string]any)
			success := false
			for _, code := range sortedKeys(responses) {
				st, err := strconv.Atoi(code)
				if err != nil {
					t.Errorf("%s: response %q is not a status code", name, code)
					continue
				}
				if st < 400 {
					success = success || st < 300
					continue
				}
				resp, _ := resolve(doc, responses[code]).(map[string]any)
				content, _ := resp["content"].(map[string]any)
				media, _ := content["application/problem+json"].(map[string]any)
				schema, _ := media["schema"].(map[string]any)
				if len(content) != 1 || schema["$ref"] != "#/components/schemas/Problem" {
					t.Errorf("%s: response %s is not only application/problem+json with the Problem schema", name, code)
				}
			}
			if !success {
				t.Errorf("%s: no 2xx response is documented", name)
			}
		})
	})

	t.Run("problem codes", func(t *testing.T) {
		problem, _ := resolve(doc, map[string]any{"$ref": "#/components/schemas/Problem"}).(map[string]any)
		props, _ := problem["properties"].(map[string]any)
		code, _ := props["code"].(map[string]any)
		enum, _ := code["enum"].([]any)
		documented := map[string]bool{}
		for _, c := range enum {
			s, _ := c.(string)
			documented[s] = true
			if _, ok := problemStatus[allot.Code(s)]; !ok {
				t.Errorf("Problem.code enum has %q, which problemStatus does not", s)
			}
		}
		desc, _ := problem["description"].(string)
		for c, st := range problemStatus {
			if !documented[string(c)] {
				t.Errorf("Problem.code enum lacks %q", c)
			}
			if row := fmt.Sprintf("| `%s` | %d |", c, st.status); !strings.Contains(desc, row) {
				t.Errorf("the Problem description has no row %q", row)
			}
		}
	})

	t.Run("refs resolve", func(t *testing.T) {
		var walk func(at string, v any)
		walk = func(at string, v any) {
			switch v := v.(type) {
			case map[string]any:
				if r, ok := v["$ref"]; ok {
					s, _ := r.(string)
					if !strings.HasPrefix(s, "#/components/") {
						t.Errorf("%s: $ref %q is not under #/components/", at, r)
					} else if pointer(doc, s) == nil {
						t.Errorf("%s: $ref %q does not resolve", at, s)
					}
				}
				for _, k := range sortedKeys(v) {
					walk(at+"/"+k, v[k])
				}
			case []any:
				for i, e := range v {
					walk(fmt.Sprintf("%s/%d", at, i), e)
				}
			}
		}
		walk("#", doc)
	})

	t.Run("served", func(t *testing.T) {
		rec := httptest.NewRecorder()
		New(nil, nil).ServeHTTP(rec, httptest.NewRequest(nethttp.MethodGet, "/v1/openapi.json", nil))
		if rec.Code != 200 || rec.Header().Get("Content-Type") != "application/json" || !bytes.Equal(rec.Body.Bytes(), openapi) {
			t.Errorf("GET /v1/openapi.json: %d %q, %d bytes; want 200 application/json with the document's %d bytes",
				rec.Code, rec.Header().Get("Content-Type"), rec.Body.Len(), len(openapi))
		}
	})
}

// openAPIPath turns a ServeMux path pattern into an OpenAPI path template:
// {name...} becomes {name}, and {$} goes.
func openAPIPath(p string) string {
	return strings.ReplaceAll(strings.ReplaceAll(p, "{$}", ""), "...}", "}")
}

// templateParams lists the {names} of an OpenAPI path template.
func templateParams(path string) []string {
	var out []string
	for rest := path; ; {
		i := strings.IndexByte(rest, '{')
		if i < 0 {
			return out
		}
		j := strings.IndexByte(rest[i:], '}')
		if j < 0 {
			return out
		}
		out = append(out, rest[i+1:i+j])
		rest = rest[i+j+1:]
	}
}

// parameters lists an operation's parameters with its path item's, $refs
// resolved.
func parameters(t *testing.T, doc, item, op map[string]any) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, ps := range []any{item["parameters"], op["parameters"]} {
		list, _ := ps.([]any)
		for _, p := range list {
			m, ok := resolve(doc, p).(map[string]any)
			if !ok {
				t.Errorf("parameter %v does not resolve to an object", p)
				continue
			}
			out = append(out, m)
		}
	}
	return out
}

// resolve follows v's $ref, if it has one, within doc.
func resolve(doc map[string]any, v any) any {
	for i := 0; i < 10; i++ {
		m, ok := v.(map[string]any)
		if !ok {
			return v
		}
		r, ok := m["$ref"].(string)
		if !ok {
			return v
		}
		v = pointer(doc, r)
	}
	return nil
}

// pointer returns the value at a local JSON pointer reference ("#/a/b"), or
// nil.
func pointer(doc map[string]any, ref string) any {
	p, ok := strings.CutPrefix(ref, "#/")
	if !ok {
		return nil
	}
	var v any = doc
	for _, tok := range strings.Split(p, "/") {
		tok = strings.ReplaceAll(strings.ReplaceAll(tok, "~1", "/"), "~0", "~")
		switch c := v.(type) {
		case map[string]any:
			if v, ok = c[tok]; !ok {
				return nil
			}
		case []any:
			i, err := strconv.Atoi(tok)
			if err != nil || i < 0 || i >= len(c) {
				return nil
			}
			v = c[i]
		default:
			return nil
		}
	}
	return v
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

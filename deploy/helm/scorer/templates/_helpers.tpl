{{/* Names and labels */}}
{{- define "scorer.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "scorer.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "scorer.labels" -}}
{{ include "scorer.selectorLabels" . }}
app.kubernetes.io/component: scorer
app.kubernetes.io/part-of: quant-assets
app.kubernetes.io/version: {{ .Values.image.tag | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/*
The Kubernetes settings of the scorer's pool, from the placement policy (deploy/pools.yaml,
passed with --set-file placementPolicy=deploy/pools.yaml): the policy stays the one place
that says what a pool's pods request and where they run.
*/}}
{{- define "scorer.pool" -}}
{{- $text := required "placementPolicy is empty: install with --set-file placementPolicy=deploy/pools.yaml" .Values.placementPolicy -}}
{{- $policy := fromYaml $text -}}
{{- if hasKey $policy "Error" -}}
{{- fail (printf "placementPolicy is not valid YAML: %s" $policy.Error) -}}
{{- end -}}
{{- $pools := $policy.pools | default dict -}}
{{- if not (hasKey $pools .Values.pool) -}}
{{- fail (printf "pool %q is not in the placement policy (pools: %s)" .Values.pool (keys $pools | sortAlpha | join ", ")) -}}
{{- end -}}
{{- $k8s := (index $pools .Values.pool).k8s | default dict -}}
{{- if hasKey $k8s "image" -}}
{{- fail (printf "pool %q sets an image; the scorer runs image.repository:image.tag" .Values.pool) -}}
{{- end -}}
{{- if not (hasKey $k8s "resources") -}}
{{- fail (printf "pool %q has no resources" .Values.pool) -}}
{{- end -}}
{{- toYaml $k8s -}}
{{- end -}}

package tekton

import corev1 "k8s.io/api/core/v1"

var corev1EmptyDir = corev1.EmptyDirVolumeSource{}
